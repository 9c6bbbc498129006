/* bzImage guest: a setup header valid for the Linux boot protocol 2.15 and a 32-bit entry
 * reading boot_params (%esi): command line, e820 RAM, initrd; then ACPI power-off. */
	.section .setup, "a"
	.org 0x1f1
	.byte 1				/* setup_sects */
	.word 0				/* root_flags */
	.long 0				/* syssize */
	.word 0				/* ram_size */
	.word 0				/* vid_mode */
	.word 0				/* root_dev */
	.word 0xaa55			/* boot_flag */
	.byte 0xeb, 0x00		/* jump */
	.ascii "HdrS"			/* header */
	.word 0x020f			/* version */
	.long 0				/* realmode_swtch */
	.word 0				/* start_sys_seg */
	.word 0				/* kernel_version */
	.byte 0				/* type_of_loader */
	.byte 1				/* loadflags: LOADED_HIGH */
	.word 0				/* setup_move_size */
	.long 0x100000			/* code32_start */
	.long 0				/* ramdisk_image */
	.long 0				/* ramdisk_size */
	.long 0				/* bootsect_kludge */
	.word 0				/* heap_end_ptr */
	.byte 0, 0			/* ext_loader_ver, ext_loader_type */
	.long 0				/* cmd_line_ptr */
	.long 0x37ffffff		/* initrd_addr_max */
	.long 0x200000			/* kernel_alignment */
	.byte 0, 0			/* relocatable_kernel, min_alignment */
	.word 0				/* xloadflags */
	.long 0xfff			/* cmdline_size */
	.org 0x400

	.code32
	.text
	.globl _start
_start:
	mov $stack_top, %esp
	mov %esi, %ebp			/* boot_params */
	mov 0x228(%ebp), %esi		/* hdr.cmd_line_ptr */
	call print_cmdline
	lea 0x2d0(%ebp), %esi		/* e820_table */
	movzbl 0x1e8(%ebp), %ecx	/* e820_entries */
	mov $20, %edx
	call sum_ram
	call print_ram
	mov 0x218(%ebp), %esi		/* hdr.ramdisk_image */
	mov 0x21c(%ebp), %ecx		/* hdr.ramdisk_size */
	call print_initrd
	jmp acpi_poweroff

#include "lib.S"

	.bss
	.align 16
	.space 4096
stack_top:
