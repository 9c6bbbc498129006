/* A polling driver for one modern virtio-pci device with two queues, shared by the
 * virtio test guests (32-bit flat mode, no interrupts). The including guest finds the
 * device with find_device, then calls find_caps and init_device. It defines fail (message in %esi), the 4 KiB-aligned ring0
 * and ring1 (desc +0, avail +0x100, used +0x200) and the QSIZE macro; this file keeps
 * common, notify, devcfg, mult, q0_notify and q1_notify. */

/* struct virtio_pci_common_cfg */
#define DEV_FEAT_SEL	0x00
#define DEV_FEAT	0x04
#define DRV_FEAT_SEL	0x08
#define DRV_FEAT	0x0c
#define STATUS		0x14
#define Q_SELECT	0x16
#define Q_SIZE		0x18
#define Q_ENABLE	0x1c
#define Q_NOTIFY_OFF	0x1e
#define Q_DESC		0x20
#define Q_DRIVER	0x28
#define Q_DEVICE	0x30

	.text
/* pci_read: config dword at offset %ecx of device %ebx -> %eax; %dx left at 0xcfc. */
pci_read:
	mov %ebx, %eax
	shl $11, %eax
	or %ecx, %eax
	and $0xfffffffc, %eax
	or $0x80000000, %eax
	mov $0xcf8, %dx
	out %eax, %dx
	mov $0xcfc, %dx
	in %dx, %eax
	ret

/* find_device: the first device on bus 0 whose vendor/device dword is %eax, into %ebx,
 * with memory decoding and bus mastering turned on; fails with message %esi if none. */
find_device:
	mov %eax, %edi
	xor %ebx, %ebx
1:	xor %ecx, %ecx
	call pci_read
	cmp %edi, %eax
	je 2f
	inc %ebx
	cmp $32, %ebx
	jb 1b
	jmp fail
2:	mov $4, %ecx
	call pci_read
	or $6, %ax
	out %ax, %dx
	ret

/* find_caps: common, notify (+ multiplier) and device regions of device %ebx. */
find_caps:
	mov $0x34, %ecx
	call pci_read
	movzbl %al, %ecx
1:	test %ecx, %ecx
	jz 3f
	call pci_read
	mov %eax, %esi			/* vndr, next, len, cfg_type */
	cmp $0x09, %al
	jne 2f
	push %ecx
	add $4, %ecx
	call pci_read
	movzbl %al, %eax		/* BAR number */
	lea 0x10(,%eax,4), %ecx
	call pci_read
	and $0xfffffff0, %eax
	mov %eax, %ebp
	mov (%esp), %ecx
	add $8, %ecx
	call pci_read
	add %eax, %ebp			/* + offset */
	mov %esi, %eax
	shr $24, %eax
	cmp $1, %al
	jne 5f
	mov %ebp, common
5:	cmp $4, %al
	jne 6f
	mov %ebp, devcfg
6:	cmp $2, %al
	jne 7f
	mov %ebp, notify
	mov (%esp), %ecx
	add $16, %ecx
	call pci_read
	mov %eax, mult
7:	pop %ecx
2:	mov %esi, %ecx
	movzbl %ch, %ecx
	jmp 1b
3:	mov $s_nocap, %esi
	cmpl $0, common
	je fail
	cmpl $0, notify
	je fail
	cmpl $0, devcfg
	je fail
	ret

/* init_device: reset, VERSION_1 only, queue 0 on ring0 and queue 1 on ring1 (their
 * notify addresses in q0_notify, q1_notify), DRIVER_OK. */
init_device:
	mov common, %ebp
	movb $0, STATUS(%ebp)
	movb $3, STATUS(%ebp)		/* ACKNOWLEDGE | DRIVER */
	movl $0, DRV_FEAT_SEL(%ebp)
	movl $0, DRV_FEAT(%ebp)
	movl $1, DRV_FEAT_SEL(%ebp)
	movl $1, DRV_FEAT(%ebp)		/* VIRTIO_F_VERSION_1 */
	movb $0xb, STATUS(%ebp)
	mov STATUS(%ebp), %al
	mov $s_features, %esi
	cmp $0xb, %al
	jne fail
	xor %eax, %eax
	mov $ring0, %edi
	call setup_queue
	mov %eax, q0_notify
	mov $1, %eax
	mov $ring1, %edi
	call setup_queue
	mov %eax, q1_notify
	movb $0xf, STATUS(%ebp)
	ret

/* setup_queue: queue %eax on ring %edi (desc +0, avail +0x100, used +0x200); returns its
 * notify address in %eax. */
setup_queue:
	mov %ax, Q_SELECT(%ebp)
	movw $QSIZE, Q_SIZE(%ebp)
	movw $1, 0x100(%edi)		/* avail flags: no interrupts */
	mov %edi, Q_DESC(%ebp)
	movl $0, Q_DESC+4(%ebp)
	lea 0x100(%edi), %ecx
	mov %ecx, Q_DRIVER(%ebp)
	movl $0, Q_DRIVER+4(%ebp)
	lea 0x200(%edi), %ecx
	mov %ecx, Q_DEVICE(%ebp)
	movl $0, Q_DEVICE+4(%ebp)
	movw $1, Q_ENABLE(%ebp)
	movzwl Q_NOTIFY_OFF(%ebp), %eax
	imull mult, %eax
	add notify, %eax
	ret


	.section .rodata
s_nocap:	.asciz "missing virtio capability"
s_features:	.asciz "FEATURES_OK did not stick"

	.data
	.align 4
common:		.long 0
notify:		.long 0
devcfg:		.long 0
mult:		.long 0
q0_notify:	.long 0
q1_notify:	.long 0
	.text
