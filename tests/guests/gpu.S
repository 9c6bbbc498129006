/* virtio-gpu guest: a polling driver for PCI 1af4:1050 (modern virtio-pci, 32-bit flat
 * mode, no interrupts). It asks for the display info, then shows a picture the size of
 * the preferred mode: four horizontal bands red, green, blue, white (a quarter of the
 * height each) in resource 1, backed by guest memory at FB; it sets a 64x64 opaque green
 * cursor (hot spot 1,1) through the cursor queue, and prints "gpu shown WxH". Then it
 * polls events_read: on VIRTIO_GPU_EVENT_DISPLAY it clears the event, asks again, prints
 * "resize WxH" and shows the picture again at the new size.
 *
 * Queues: 0 (control) and 1 (cursor), QSIZE entries each; a request is one readable and
 * one writable descriptor (0 and 1), put in the avail ring, kicked, and the used index
 * polled. */
#include "pvh_note.S"

#define QSIZE		8
#define FB		0x1000000

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	cld
	mov $0x10501af4, %eax
	mov $s_nogpu, %esi
	call find_device
	call find_caps
	call init_device
	mov $s_found, %esi
	call puts

	call display_info
	call show
	call set_cursor
	mov $s_shown, %esi
	call puts
	call put_size

	/* Wait for display-change events. */
3:	mov devcfg, %ebp
	mov (%ebp), %eax		/* events_read */
	test $1, %al
	jz 3b
	movl $1, 4(%ebp)		/* events_clear */
	call display_info
	mov $s_resize, %esi
	call puts
	call put_size
	call show
	mov $s_shown, %esi
	call puts
	call put_size
	jmp 3b

/* fail: "gpu failed: " + %esi, then stop. */
fail:
	push %esi
	mov $s_failed, %esi
	call puts
	pop %esi
	call puts
	mov $'\n', %al
	call putc
4:	cli
	hlt
	jmp 4b

/* put_size: "WxH\n" from width/height. */
put_size:
	mov width, %eax
	call putdec
	mov $'x', %al
	call putc
	mov height, %eax
	call putdec
	mov $'\n', %al
	jmp putc

/* submit: request req (%ecx bytes) and response resp on ring %edi, kicking notify address
 * %ebx with queue number %eax; waits for it and checks the response type is %edx. */
submit:
	push %eax
	movl $req, (%edi)
	movl $0, 4(%edi)
	mov %ecx, 8(%edi)
	movw $1, 12(%edi)		/* NEXT */
	movw $1, 14(%edi)
	movl $resp, 16(%edi)
	movl $0, 20(%edi)
	movl $512, 24(%edi)
	movw $2, 28(%edi)		/* WRITE */
	movw $0, 30(%edi)
	movzwl 0x102(%edi), %eax
	mov %eax, %ecx
	and $(QSIZE - 1), %ecx
	movw $0, 0x104(%edi,%ecx,2)
	inc %eax
	mov %ax, 0x102(%edi)
	pop %eax
	mov %ax, (%ebx)
1:	movzwl 0x202(%edi), %eax
	cmp %ax, 0x102(%edi)
	jne 1b
	cmp resp, %edx
	je 2f
	mov $s_badresp, %esi
	jmp fail
2:	ret

/* ctl: control request of %ecx bytes expecting response type %edx. */
ctl:
	mov $ring0, %edi
	mov q0_notify, %ebx
	xor %eax, %eax
	jmp submit

/* new_req: zeroes req and sets its type to %eax. */
new_req:
	push %edi
	push %ecx
	push %eax
	mov $req, %edi
	mov $16, %ecx
	xor %eax, %eax
	rep stosl
	pop %eax
	mov %eax, req
	pop %ecx
	pop %edi
	ret

/* display_info: width, height of scanout 0. */
display_info:
	mov $0x0100, %eax
	call new_req
	mov $24, %ecx
	mov $0x1101, %edx
	call ctl
	mov resp+24+8, %eax
	mov %eax, width
	mov resp+24+12, %eax
	mov %eax, height
	ret

/* show: (re)creates resource 1 at width x height, paints the bands into its backing,
 * transfers, scans it out and flushes. */
show:
	cmpl $0, shown
	je 1f
	mov $0x0103, %eax		/* SET_SCANOUT to nothing */
	call new_req
	mov $48, %ecx
	mov $0x1100, %edx
	call ctl
	mov $0x0102, %eax		/* RESOURCE_UNREF 1 */
	call new_req
	movl $1, req+24
	mov $32, %ecx
	mov $0x1100, %edx
	call ctl
1:	movl $1, shown
	mov $0x0101, %eax		/* RESOURCE_CREATE_2D 1, B8G8R8X8 */
	call new_req
	movl $1, req+24
	movl $2, req+28
	mov width, %eax
	mov %eax, req+32
	mov height, %eax
	mov %eax, req+36
	mov $40, %ecx
	mov $0x1100, %edx
	call ctl
	mov width, %eax			/* backing: one entry, width * height * 4 bytes */
	imul height, %eax
	shl $2, %eax
	mov %eax, %ebx
	mov $0x0106, %eax
	call new_req
	movl $1, req+24
	movl $1, req+28
	movl $FB, req+32
	mov %ebx, req+40
	mov $48, %ecx
	mov $0x1100, %edx
	call ctl
	/* Four bands of height / 4 rows; the rows left over stay as they were. */
	mov $FB, %edi
	mov $colours, %esi
	mov height, %ebx
	shr $2, %ebx
	imul width, %ebx
	mov $4, %edx
2:	lodsl
	mov %ebx, %ecx
	rep stosl
	dec %edx
	jnz 2b
	mov $0x0105, %eax		/* TRANSFER_TO_HOST_2D, whole resource, offset 0 */
	call new_req
	call req_full_rect
	movl $1, req+48
	mov $56, %ecx
	mov $0x1100, %edx
	call ctl
	mov $0x0103, %eax		/* SET_SCANOUT 0 = resource 1 */
	call new_req
	call req_full_rect
	movl $0, req+40
	movl $1, req+44
	mov $48, %ecx
	mov $0x1100, %edx
	call ctl
	mov $0x0104, %eax		/* RESOURCE_FLUSH */
	call new_req
	call req_full_rect
	movl $1, req+40
	mov $48, %ecx
	mov $0x1100, %edx
	jmp ctl

/* req_full_rect: the rectangle 0, 0, width, height at req+24. */
req_full_rect:
	movl $0, req+24
	movl $0, req+28
	mov width, %eax
	mov %eax, req+32
	mov height, %eax
	mov %eax, req+36
	ret

/* set_cursor: resource 2, 64x64 B8G8R8A8 opaque green, as the cursor (hot spot 1,1). */
set_cursor:
	mov $0x0101, %eax
	call new_req
	movl $2, req+24
	movl $1, req+28
	movl $64, req+32
	movl $64, req+36
	mov $40, %ecx
	mov $0x1100, %edx
	call ctl
	mov $cursor, %edi
	mov $0xff00ff00, %eax
	mov $(64 * 64), %ecx
	rep stosl
	mov $0x0106, %eax
	call new_req
	movl $2, req+24
	movl $1, req+28
	movl $cursor, req+32
	movl $(64 * 64 * 4), req+40
	mov $48, %ecx
	mov $0x1100, %edx
	call ctl
	mov $0x0105, %eax
	call new_req
	movl $64, req+32
	movl $64, req+36
	movl $2, req+48
	mov $56, %ecx
	mov $0x1100, %edx
	call ctl
	mov $0x0300, %eax		/* UPDATE_CURSOR on the cursor queue */
	call new_req
	movl $10, req+28		/* pos x, y */
	movl $10, req+32
	movl $2, req+40			/* resource */
	movl $1, req+44			/* hot spot */
	movl $1, req+48
	mov $56, %ecx
	mov $0x1100, %edx
	mov $ring1, %edi
	mov q1_notify, %ebx
	mov $1, %eax
	jmp submit

#include "virtio_drv.S"
#include "lib.S"

	.section .rodata
	.align 4
colours:	.long 0x00ff0000, 0x0000ff00, 0x000000ff, 0x00ffffff
s_nogpu:	.asciz "no virtio-gpu"
s_badresp:	.asciz "unexpected response"
s_failed:	.asciz "gpu failed: "
s_found:	.asciz "virtio-gpu 1af4:1050\n"
s_shown:	.asciz "gpu shown "
s_resize:	.asciz "resize "

	.data
	.align 4
width:		.long 0
height:		.long 0
shown:		.long 0

	.bss
	.align 4096
ring0:	.space 4096
ring1:	.space 4096
cursor:		.space 64 * 64 * 4
req:		.space 64
resp:		.space 512
	.align 16
	.space 4096
stack_top:
